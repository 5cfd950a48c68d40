"""Front-end plumbing every front-end can reach: the engine's events on a terminal or a serial
console (`events`: progress bars, milestone lines, JSON lines; the CLI, unattended mode and the
agent), the listing commands' tables (`tables`), and standard streams that may break without
breaking a flash (`streams`). The TUI draws its own screens from the same events and labels."""
