"""`python -m alexnet ...` is the `alexnet` command (also the entry point torchrun uses)."""
from .cli import entry

if __name__ == "__main__":  # not when multiprocessing's spawn re-imports this module
    entry()
