"""Importing this package registers the project's tasks with Model Garden."""
from official_ext.tasks import image_classification
