from orchestrator.cli.app import main

raise SystemExit(main())
