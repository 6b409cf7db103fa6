"""Roles and scopes: the config that defines them, what each ticket records at filing, and
``helpdeskctl --as`` — every scope × every ticket origin, for list, show and every write command."""

from __future__ import annotations

import json

import pytest

from helpdeskd import ctl
from helpdeskd.config import build_config
from helpdeskd.errors import ConfigError
from helpdeskd.scopes import ADMIN, Scope, classify, parse_scope, visible

from roles import SENDERS, VISIBLE, config_data, file_every_origin, services, write


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One state directory with a ticket from every origin, shared by the read-only matrix tests."""
    tmp = tmp_path_factory.mktemp("roles")
    svc = services(tmp)
    return write(tmp), svc, file_every_origin(svc)


def run(capsys, path, *args: str) -> tuple[int, str, str]:
    code = ctl.main(["-c", str(path), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


# -- config -----------------------------------------------------------------------------------------
def test_the_roles_config_is_valid_and_complete(tmp_path):
    access = services(tmp_path).config.access
    assert {d.domain: d.reseller for d in access.domains} == {
        "uno.example": "acme", "dos.example": "acme", "tres.example": "beta", "cuatro.example": ""}
    assert [classify(SENDERS[k], access).role for k in ("admin", "acme", "uno-owner", "uno-user", "unknown")] == [
        "admin", "reseller", "owner", "user", "unknown"]


@pytest.mark.parametrize("change,problem", [
    (lambda d: d["resellers"][1]["domains"].append("uno.example"),
     'resellers[1].domains[1]: "uno.example" already belongs to reseller "acme"'),
    (lambda d: d["domains"][1].update(reseller="acme"),
     'domains[1].reseller: "tres.example" already belongs to reseller "beta"'),
    (lambda d: d["domains"][2].update(reseller="gamma"),
     'domains[2].reseller: "gamma" is not a configured reseller (known: acme, beta)'),
    (lambda d: d["resellers"][0]["contacts"].append("root@hosting.example"),
     'resellers[0].contacts[1]: "root@hosting.example" is already admin (access.admins[0])'),
    (lambda d: d["resellers"][1]["contacts"].append("VENTAS@acme.example"),
     'resellers[1].contacts[1]: "ventas@acme.example" is already reseller (resellers[0].contacts[0])'),
    (lambda d: d["domains"][1]["owners"].append("jefe@uno.example"),
     'domains[1].owners[1]: "jefe@uno.example" is already owner (domains[0].owners[0])'),
    (lambda d: d["domains"][1]["owners"].append("ventas@acme.example"),
     'domains[1].owners[1]: "ventas@acme.example" is already reseller'),
    (lambda d: d["domains"].append({"domain": "UNO.example"}), 'domains[3].domain: "uno.example" is listed twice'),
    (lambda d: d["resellers"].append({"name": "acme"}), 'resellers[2].name: duplicate "acme"'),
    (lambda d: d["access"].update(allow_domains=["x.example"], deny_domains=["x.example"]),
     'access.deny_domains: "x.example" is also in allow_domains'),
    (lambda d: d["access"].update(unknown_senders="drop"), 'access.unknown_senders: "drop" is not a policy'),
    (lambda d: d["access"].update(admins=["support@helpdesk.localhost"]), "access.admins[0]: "),
    (lambda d: d["resellers"][0].update(domain=["x.example"]), 'resellers[0].domain: unknown key (did you mean "domains"?)'),
    (lambda d: d.update(mail_gateway={"enabled": "no"}), "mail_gateway.enabled: expected true or false"),
    (lambda d: d.update(mail_gateway={"helper_process": 1}), "mail_gateway.helper_process: expected true or false"),
    (lambda d: d.update(status_requests={"keywords": []}), "status_requests.keywords: at least one keyword"),
    (lambda d: d.update(status_requests={"trusted_authserv_ids": ["mx; evil"]}), "status_requests.trusted_authserv_ids[0]"),
    (lambda d: d.update(status_requests={"code_ttl": "30s"}), "status_requests.code_ttl: must be between"),
])
def test_overlaps_conflicts_and_unknown_references_are_reported_with_their_path(tmp_path, change, problem):
    data = config_data(tmp_path)
    change(data)
    with pytest.raises(ConfigError) as caught:
        build_config(data, tmp_path)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_a_reseller_contact_may_own_one_of_its_own_domains(tmp_path):
    data = config_data(tmp_path)
    data["domains"][0]["owners"].append("ventas@acme.example")
    access = build_config(data, tmp_path).access
    assert classify("ventas@acme.example", access).role == "reseller"  # the wider view wins


# -- what a ticket records ---------------------------------------------------------------------------
def test_every_ticket_records_its_origin_at_filing_time(world):
    _, svc, ids = world
    origins = {label: (t.origin_role, t.origin_domain, t.origin_reseller)
               for label, t in ((k, svc.store.get(v)) for k, v in ids.items())}
    assert origins == {
        "admin": ("admin", "", ""), "acme": ("reseller", "", "acme"), "beta": ("reseller", "", "beta"),
        "uno-owner": ("owner", "uno.example", "acme"), "uno-user": ("user", "uno.example", "acme"),
        "uno-old": ("", "", ""), "dos-user": ("user", "dos.example", "acme"),
        "tres-owner": ("owner", "tres.example", "beta"), "tres-user": ("user", "tres.example", "beta"),
        "cuatro-owner": ("owner", "cuatro.example", ""), "cuatro-user": ("user", "cuatro.example", ""),
        "unknown": ("unknown", "", ""),
    }


def test_origin_stays_with_the_ticket_when_the_config_changes(tmp_path):
    svc = services(tmp_path)
    ids = file_every_origin(svc)
    moved = config_data(tmp_path)
    moved["resellers"][0]["domains"] = ["dos.example"]
    moved["resellers"][1]["domains"].append("uno.example")
    access = build_config(moved, tmp_path).access
    ticket = svc.store.get(ids["uno-user"])
    assert visible(Scope("reseller", "acme"), ticket, access)  # filed under acme: stays acme's
    assert visible(Scope("reseller", "beta"), svc.store.get(ids["uno-old"]), access)  # no record: today's rule


# -- helpdeskctl --as: the matrix ------------------------------------------------------------------
@pytest.mark.parametrize("scope", sorted(VISIBLE))
def test_list_shows_exactly_the_scope(world, capsys, scope):
    path, _, ids = world
    code, out, _ = run(capsys, path, "list", "--all", "--json", "--as", scope)
    assert code == 0
    labels = {label for label, tid in ids.items() if tid in {t["id"] for t in json.loads(out)}}
    assert labels == VISIBLE[scope]
    code, text, _ = run(capsys, path, "list", "--all", "--as", scope)
    hidden = set(SENDERS) - VISIBLE[scope]
    assert not [label for label in hidden if SENDERS[label] in text or f"Problema de {label}" in text]


@pytest.mark.parametrize("scope", sorted(VISIBLE))
def test_show_answers_only_inside_the_scope(world, capsys, scope):
    path, _, ids = world
    for label, tid in ids.items():
        code, out, err = run(capsys, path, "show", str(tid), "--as", scope)
        if label in VISIBLE[scope]:
            assert code == 0 and f"Problema de {label}" in out, (scope, label)
        else:  # indistinguishable from a ticket that does not exist
            assert (code, out, err) == (1, "", f"helpdeskctl: no ticket #{tid}\n"), (scope, label)


@pytest.mark.parametrize("scope", sorted(VISIBLE))
def test_act_changes_only_inside_the_scope(world, capsys, scope):
    path, svc, ids = world  # notes only add history: the other matrix tests are unaffected
    for label, tid in ids.items():
        before = len(svc.store.events(tid))
        code, _, err = run(capsys, path, "note", str(tid), "-m", f"nota de {scope}", "--as", scope)
        inside = label in VISIBLE[scope]
        assert code == (0 if inside else 1), (scope, label, err)
        assert len(svc.store.events(tid)) == before + inside, (scope, label)


@pytest.mark.parametrize("command", [
    ["reply", "-m", "respuesta"], ["note", "-m", "nota"], ["close"], ["reopen"], ["assign", "agente@helpdesk.localhost"],
    ["set", "priority", "high"], ["set", "status", "closed"],
])
def test_every_write_command_refuses_a_ticket_outside_the_scope(tmp_path, capsys, command):
    svc = services(tmp_path)
    path, ids = write(tmp_path), file_every_origin(svc)
    tid = ids["tres-user"]  # beta's customer
    before = (svc.store.get(tid), svc.store.events(tid), len(list(svc.outbox.entries())))
    code, _, err = run(capsys, path, command[0], str(tid), *command[1:], "--as", "reseller:acme")
    assert code == 1 and f"no ticket #{tid}" in err
    assert (svc.store.get(tid), svc.store.events(tid), len(list(svc.outbox.entries()))) == before
    code, _, err = run(capsys, path, command[0], str(tid), *command[1:], "--as", "reseller:beta")
    assert code == 0, err


@pytest.mark.parametrize("command", [["outbox"], ["quarantine"], ["refused"], ["held"], ["outbox", "retry", "--all"]])
def test_mail_outside_tickets_is_for_the_admin_only(world, capsys, command):
    path, _, _ = world
    head, rest = command[:1], command[1:]
    code, out, err = run(capsys, path, *head, "--as", "domain:uno.example", *rest)
    assert code == 1 and out == "" and "only the admin" in err
    assert run(capsys, path, *command)[0] == 0


@pytest.mark.parametrize("text,problem", [("reseller:gamma", "unknown reseller 'gamma' (known: acme, beta)"),
                                          ("domain:cinco.example", "unknown domain"), ("user:nadie", "expected"),
                                          ("root", "expected admin, reseller:NAME")])
def test_an_unknown_scope_is_an_error_not_an_empty_view(world, capsys, text, problem):
    path, _, _ = world
    code, out, err = run(capsys, path, "list", "--as", text)
    assert code == 2 and out == "" and problem in err


def test_scopes_parse_case_insensitively_and_without_as_it_is_admin(world):
    access = services(world[0].parent).config.access
    assert parse_scope("Reseller:ACME", access) == Scope("reseller", "acme")
    assert parse_scope("admin", access) == ADMIN
    assert not visible(Scope("bogus", "x"), world[1].store.get(1), access)  # unknown kinds see nothing
