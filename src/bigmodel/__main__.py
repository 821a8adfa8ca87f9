from bigmodel.cli import main

main()
