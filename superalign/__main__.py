import sys

from .cli import main
from .runs.jobs import exit_process_group

rc = main() or 0
exit_process_group(rc)  # data-parallel launches end here (see its docstring); returns at once otherwise
sys.exit(rc)
