"""Tasks: pure Python (no torch) streams of examples with their scorers.

`get_task` turns a `--task` value into a Task; `register_task` (or the `task` decorator) adds one.
"""

from thickets.tasks.base import Example, Score, ScoredExample, Task, as_task
from thickets.tasks.names import describe_tasks, get_task, score_one
from thickets.tasks.registry import register_task, task

__all__ = [
    "Example",
    "Score",
    "ScoredExample",
    "Task",
    "as_task",
    "describe_tasks",
    "get_task",
    "register_task",
    "score_one",
    "task",
]
