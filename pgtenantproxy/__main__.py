from pgtenantproxy.cli import main

raise SystemExit(main())
