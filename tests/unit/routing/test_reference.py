"""Which reads may use a shop's reference copies (pure)."""

from __future__ import annotations

from pgtenantproxy.routing.analysis import Analyser
from pgtenantproxy.routing.identify import BoundParams, identify
from pgtenantproxy.routing.reference import ReferenceFacts, local_shop

A = Analyser()
TENANT = frozenset({"public.repairs", "public.customers"})
FACTS = ReferenceFacts({"public.device_models": None, "public.users": "shop_id"}, frozenset({5, 6}), 1.0)


def shop_of(*sqls: str, params: BoundParams | None = None, shop: int | None = None) -> int | None:
    pairs, idents = [], []
    for sql in sqls:
        for stmt in A.analyse(sql).statements:
            pairs.append((stmt, params))
            idents.append(identify(stmt, order=("query",), params=params, tenant_tables=TENANT))
    return local_shop(pairs, idents, FACTS, TENANT, shop=shop)


def test_a_shops_join_with_a_whole_reference_table() -> None:
    assert shop_of("SELECT r.id, m.model FROM repairs r JOIN device_models m ON m.id = r.model_id "
                   "WHERE r.shop_id = 5") == 5
    assert shop_of("SELECT r.id FROM repairs r WHERE r.shop_id = $1 AND EXISTS (SELECT 1 "
                   "FROM device_models m WHERE m.id = r.model_id)", params=BoundParams((b"6",))) == 6


def test_a_filtered_copy_needs_its_occurrence_pinned_to_the_shop() -> None:
    assert shop_of("SELECT r.id, u.name FROM repairs r JOIN users u ON u.shop_id = r.shop_id "
                   "AND u.id = r.tech WHERE r.shop_id = 5") == 5
    assert shop_of("SELECT r.id, u.name FROM repairs r JOIN users u ON u.id = r.tech "
                   "WHERE r.shop_id = 5") is None
    assert shop_of("SELECT name FROM users WHERE shop_id = 5 AND role = 'owner'") == 5


def test_what_stays_elsewhere() -> None:
    assert shop_of("SELECT * FROM repairs WHERE shop_id = 5") is None  # no reference table: the usual routing
    assert shop_of("SELECT * FROM device_models") is None  # no shop named
    assert shop_of("SELECT r.id FROM repairs r JOIN shops s ON s.id = r.shop_id WHERE r.shop_id = 5") is None
    assert shop_of("SELECT r.id FROM repairs r JOIN device_models m ON m.id = r.model_id "
                   "WHERE r.shop_id IN (5, 6)") is None  # several shops: federated instead
    assert shop_of("SELECT count(*) FROM repairs r JOIN device_models m ON m.id = r.model_id") is None
    assert shop_of("UPDATE device_models SET model = 'x' WHERE id = 1") is None  # copies are read-only
    assert shop_of("SELECT * FROM device_models FOR UPDATE", shop=5) is None


def test_inside_a_shops_transaction() -> None:
    assert shop_of("SELECT * FROM device_models WHERE id = 3", shop=5) == 5
    assert shop_of("SELECT * FROM users WHERE shop_id = 6", shop=5) is None  # another shop's rows
    assert shop_of("SELECT * FROM users", shop=5) is None  # a filtered copy, unpinned
