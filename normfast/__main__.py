from normfast.cli import main

main()
