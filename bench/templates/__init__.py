"""Jinja2 templates of ``bench report`` (a package so the ``*.j2`` files ship as package data)."""
