from calm_study.cli import entry

entry()
