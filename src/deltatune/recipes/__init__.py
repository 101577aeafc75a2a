"""Recipes: one module per task, each registering a :class:`deltatune.tasks.TaskSpec`.

Every module in this package is imported when the task list is first needed
(:func:`deltatune.tasks.available_tasks`); adding a task means adding a module here (or registering
one from anywhere, e.g. a plugin's entry point). Training itself is :func:`deltatune.runs.run_config`.
"""
