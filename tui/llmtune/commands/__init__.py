"""One module per sub-command: its logic, calling the core, and what it prints.

``llmtune.cli`` parses the arguments and calls ``run`` of the command's module
with the parsed namespace and the typed values it built (``Settings``,
``MachineOptions``); the module plans, runs or inspects through the core and
renders text or JSON. No module here imports Textual but ``app``, which opens it.
"""
