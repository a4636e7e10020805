"""Sample data: a small HandyShop-like multi-tenant database for the demo."""

from importlib.resources import files


def handyshop_sql() -> str:
    return files(__package__).joinpath("handyshop.sql").read_text(encoding="utf-8")
