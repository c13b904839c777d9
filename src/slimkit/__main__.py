"""python -m slimkit: the same as the slimkit command."""
from .cli import run

if __name__ == "__main__":
    run()
