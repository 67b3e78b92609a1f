from thunder_env.images.cli import main

raise SystemExit(main())
