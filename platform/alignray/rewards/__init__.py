"""Rewards: reward scorers (`scorers`), MORLAIF scalarizers (`scalarize`) and the independent
offline judges (`judges`). Nothing is imported here, so that the light judges do not pull in torch."""
