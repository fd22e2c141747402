"""Sweeps: a grid of settings x several seeds (`grid`), run in parallel and recorded
(`execute`), summarized with 95% intervals (`statistics`), drawn (`figures`); the
`asyncfl-sweep` command and the experiment scripts' arguments (`cli`)."""
