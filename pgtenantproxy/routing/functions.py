"""The allow-list: what a read may call and still run on a tenant database.

Policy: a function is safe when it is immutable or stable *and* gives the same
answer on the shop's own database as on unified, for the same rows. Anything
else (volatile functions, functions that write or take locks, functions whose
answer depends on the session, the role, the database or its catalogs, and
every user-defined or schema-qualified function outside ``pg_catalog``) makes
the statement not read-only, so it goes to unified. An allow-list fails safe:
a function we have never heard of is treated as unsafe.

Examples kept out on purpose: ``nextval``/``setval``/``currval`` (sequences),
``random``, ``gen_random_uuid``, ``clock_timestamp``, ``pg_sleep``,
``pg_advisory_lock`` and friends, ``set_config``, ``current_setting`` (session
settings a tenant connection does not share), ``txid_current``,
``pg_backend_pid``, ``current_database``, ``version``, ``has_*_privilege``
(the tenant role differs), ``pg_get_*`` and size functions (catalogs differ),
``dblink*``, ``lo_*``, ``pg_read_file``, ``pg_notify``, text search functions
(they depend on ``default_text_search_config``). Casts to ``reg*`` types read
catalogs (OIDs differ between databases), as do system columns (``ctid``,
``xmin``...); SQL value functions naming the user, role, database or schema
depend on the connection. All of those are unsafe too.
"""

from __future__ import annotations

_AGGREGATES = """
count sum avg min max array_agg string_agg bool_and bool_or every bit_and bit_or bit_xor
json_agg jsonb_agg json_agg_strict jsonb_agg_strict json_object_agg jsonb_object_agg
json_object_agg_strict jsonb_object_agg_strict json_object_agg_unique jsonb_object_agg_unique
stddev stddev_pop stddev_samp variance var_pop var_samp corr covar_pop covar_samp
regr_avgx regr_avgy regr_count regr_intercept regr_r2 regr_slope regr_sxx regr_sxy regr_syy
percentile_cont percentile_disc mode any_value range_agg range_intersect_agg xmlagg
"""
_WINDOW = "row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value nth_value"
_MATH = """
abs ceil ceiling floor round trunc mod power pow sqrt cbrt exp ln log log10 sign div gcd lcm
width_bucket pi degrees radians sin cos tan asin acos atan atan2 sind cosd tand asind acosd atand
scale min_scale trim_scale factorial
"""
_CASTS = "int2 int4 int8 float4 float8 numeric text varchar bool date time timestamp timestamptz interval"
_STRINGS = """
lower upper initcap length char_length character_length octet_length bit_length substr substring
position strpos left right lpad rpad ltrim rtrim btrim trim replace translate reverse repeat
split_part concat concat_ws format quote_ident quote_literal quote_nullable md5 sha224 sha256
sha384 sha512 encode decode ascii chr starts_with to_hex overlay normalize is_normalized
regexp_replace regexp_match regexp_matches regexp_split_to_array regexp_split_to_table regexp_like
regexp_count regexp_instr regexp_substr string_to_array string_to_table array_to_string
like_escape similar_escape similar_to_escape
"""
_TIME = """
now transaction_timestamp statement_timestamp date_trunc date_part extract date_bin age
make_date make_time make_timestamp make_timestamptz make_interval justify_days justify_hours
justify_interval isfinite timezone overlaps to_char to_number to_date to_timestamp date_add
date_subtract
"""
_JSON = """
to_json to_jsonb row_to_json array_to_json json_build_object jsonb_build_object json_build_array
jsonb_build_array json_object jsonb_object json_array_length jsonb_array_length json_each jsonb_each
json_each_text jsonb_each_text json_extract_path jsonb_extract_path json_extract_path_text
jsonb_extract_path_text json_object_keys jsonb_object_keys json_array_elements jsonb_array_elements
json_array_elements_text jsonb_array_elements_text json_typeof jsonb_typeof json_strip_nulls
jsonb_strip_nulls jsonb_pretty jsonb_set jsonb_set_lax jsonb_insert jsonb_path_query
jsonb_path_exists jsonb_path_match jsonb_path_query_array jsonb_path_query_first json_to_record
jsonb_to_record json_to_recordset jsonb_to_recordset
"""
_ARRAYS = """
array_length array_lower array_upper array_ndims array_dims array_position array_positions
array_append array_prepend array_cat array_remove array_replace cardinality unnest array_fill
trim_array generate_series generate_subscripts
"""
_MISC = "num_nulls num_nonnulls pg_typeof coalesce nullif greatest least"

#: Function names (unqualified or ``pg_catalog.``) a read may call.
SAFE_FUNCTIONS: frozenset[str] = frozenset(
    " ".join((_AGGREGATES, _WINDOW, _MATH, _CASTS, _STRINGS, _TIME, _JSON, _ARRAYS, _MISC)).split()
)

#: SQL value functions (``CURRENT_DATE``...) that do not depend on the connection.
SAFE_VALUE_FUNCTIONS: frozenset[str] = frozenset(
    {
        "SVFOP_CURRENT_DATE",
        "SVFOP_CURRENT_TIME",
        "SVFOP_CURRENT_TIME_N",
        "SVFOP_CURRENT_TIMESTAMP",
        "SVFOP_CURRENT_TIMESTAMP_N",
        "SVFOP_LOCALTIME",
        "SVFOP_LOCALTIME_N",
        "SVFOP_LOCALTIMESTAMP",
        "SVFOP_LOCALTIMESTAMP_N",
    }
)

#: Columns every table has whose values differ between databases.
SYSTEM_COLUMNS: frozenset[str] = frozenset({"ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"})


def function_is_safe(names: list[str]) -> bool:
    """``names`` is the qualified function name as parsed (``["pg_catalog", "lower"]``)."""
    if len(names) == 1:
        return names[0] in SAFE_FUNCTIONS
    return len(names) == 2 and names[0] == "pg_catalog" and names[1] in SAFE_FUNCTIONS


def cast_is_safe(type_names: list[str]) -> bool:
    """Casts to ``reg*`` types look names up in the catalogs: OIDs differ per database."""
    last = type_names[-1] if type_names else ""
    return not last.startswith("reg")


#: Unsafe for routing, but they change no table rows (for the write-watermark of read-your-writes).
_NO_ROW_WRITES = frozenset(
    """
    nextval currval lastval setval random setseed gen_random_uuid uuid_generate_v1 uuid_generate_v4
    clock_timestamp timeofday pg_sleep pg_sleep_for pg_sleep_until current_setting set_config
    txid_current txid_current_if_assigned pg_current_xact_id pg_current_xact_id_if_assigned
    pg_backend_pid current_database current_schema current_schemas version inet_server_addr
    inet_server_port inet_client_addr inet_client_port pg_postmaster_start_time
    pg_advisory_lock pg_advisory_lock_shared pg_advisory_unlock pg_advisory_unlock_shared
    pg_advisory_unlock_all pg_advisory_xact_lock pg_advisory_xact_lock_shared pg_try_advisory_lock
    pg_try_advisory_lock_shared pg_try_advisory_xact_lock pg_try_advisory_xact_lock_shared
    has_table_privilege has_column_privilege has_schema_privilege has_database_privilege
    has_function_privilege has_sequence_privilege pg_has_role
    current_user current_role session_user user current_catalog system_user
    """.split()
)


def writes_no_rows(unsafe: str) -> bool:
    """An entry of ``StatementAnalysis.unsafe`` that cannot change table rows."""
    if unsafe.startswith("::") or unsafe in SYSTEM_COLUMNS:
        return True
    return unsafe.removeprefix("pg_catalog.") in _NO_ROW_WRITES
