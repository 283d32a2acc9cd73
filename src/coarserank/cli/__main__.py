from coarserank.cli import main

main()
