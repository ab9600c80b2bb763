"""atlas.agents"""
