"""HTTP views: one blueprint per resource, each view validate -> service -> model_dump."""

from __future__ import annotations

from flask import Flask

from kb.api.admin import bp as admin_bp
from kb.api.documents import bp as documents_bp
from kb.api.search import bp as search_bp
from kb.api.system import bp as system_bp
from kb.api.ui import bp as ui_bp


def register_blueprints(app: Flask) -> None:
    for blueprint in (documents_bp, search_bp, system_bp, admin_bp, ui_bp):
        app.register_blueprint(blueprint)
