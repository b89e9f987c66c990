from osufs.entry import main

main()
