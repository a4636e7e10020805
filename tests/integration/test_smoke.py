"""First contact: psql through the proxy gives what it gives direct."""

from pgtenantproxy.embedded import PgCluster
from tests.fixtures.clusters import PASSWORDS, psql
from tests.fixtures.proxy import ProxyThread


def test_psql_through_proxy_matches_direct(unified: PgCluster, proxy: ProxyThread) -> None:
    sql = "SELECT 1 AS one, 'héllo'::text, NULL::int, ARRAY[1,2], '{\"a\": 1}'::jsonb"
    direct = psql(unified, sql, dbname="app", user="app", password=PASSWORDS["app"])
    through = psql(unified, sql, dbname="app", user="app", password=PASSWORDS["app"], port=proxy.port)
    assert through == direct
    assert "héllo" in through
