"""Datasets and tasks shared by every pillar."""

from .files import read_table, resolve_data_dir
from .splits import Splits, make_splits
from .tasks import Task, TaskSpec, list_tasks, load_task, register_task

__all__ = ["Task", "TaskSpec", "list_tasks", "load_task", "register_task", "Splits", "make_splits",
           "read_table", "resolve_data_dir"]
