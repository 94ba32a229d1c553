from fluxedit.cli import main

raise SystemExit(main())
