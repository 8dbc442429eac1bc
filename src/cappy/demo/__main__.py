"""``python -m cappy.demo``: see :mod:`cappy.demo`."""

from cappy.demo.run import main

main()
