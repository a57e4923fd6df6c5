from ppgen.cli import main

raise SystemExit(main())
