"""Code shared by two or more Moorage components (manager, agent, appproxy)."""
