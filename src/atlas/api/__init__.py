"""atlas.api"""
