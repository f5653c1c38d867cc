"""Importing this package registers every experiment of the project.

It also registers the project's task, optimizer and schedules, so each
experiment resolves, builds its task and its optimizer through Model Garden's
factories (`exp_factory`, `task_factory`).
"""
from experiments import digits_demo
from experiments import paper_table2
from experiments import table2_digits
from official_ext import tasks  # pylint: disable=unused-import
from official_ext.core import experiment_list

EXPERIMENT_NAMES = experiment_list.project_experiments()
