"""`python -m workpool`: the same command as `workpool`."""

from workpool.cli.main import main

if __name__ == "__main__":
    main()
