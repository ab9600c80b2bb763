"""atlas.runtime"""
