import sys

from calm_study.cli import main

sys.exit(main())
