"""The bench's progress lines: one for each step, a loud one for what must not be missed."""

from __future__ import annotations


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def loud(message: str) -> None:
    bar = "!" * 78
    print(f"\n{bar}\n!!! {message}\n{bar}\n", flush=True)
