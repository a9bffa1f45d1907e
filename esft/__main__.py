from esft.cli import main

main()
