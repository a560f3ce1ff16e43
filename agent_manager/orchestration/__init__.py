"""Plans (DAGs of steps), the planner that drafts them and the engine that runs them."""
