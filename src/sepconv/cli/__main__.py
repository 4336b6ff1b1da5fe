from sepconv.cli import entry

entry()
