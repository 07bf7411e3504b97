"""The web dashboard (`workpool dashboard`): pools, jobs and a job's detail, live, with actions
through the pool's own calls; server-rendered, its assets in static/, no front-end build."""
