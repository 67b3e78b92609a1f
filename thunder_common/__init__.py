"""What the components share and may not import from each other: the error root and the program-id rule.

Every package of the repository may import this one; it imports none of them. Keep it tiny: only what more
than one component truly needs.
"""
