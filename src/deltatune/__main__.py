from deltatune.cli import main

raise SystemExit(main())
