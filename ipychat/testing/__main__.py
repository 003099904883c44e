"""`python -m ipychat.testing`: serve a FakeOpenAIServer until interrupted."""

from ipychat.testing import main

raise SystemExit(main())
