from osufs.cli import main

main()
