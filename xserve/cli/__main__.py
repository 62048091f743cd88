from xserve.cli.main import main

main()
