"""The library the stages share: the task, data generation, engines, scoring, files and machine facts.

No module here imports a stage (stages/) or a tool (tools/). See docs/architecture.md for what is where.
"""
