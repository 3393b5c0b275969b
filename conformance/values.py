"""What a case's inputs and expectations refer to: variables fresh for each run of a case (a new
patient with a valid INS, new document OIDs), files with their variables filled in, and values
picked out of JSON answers by path."""
from __future__ import annotations

import base64
import hashlib
import random
import re
from typing import Any

from stdnum.fr import nir

VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?::([^}]+))?\}")


def fresh_ins(rng: random.Random) -> str:
    """A well-formed NIR (sex, year, month, department, commune, order) with its key."""
    body = (f"{rng.choice('12')}{rng.randint(40, 99):02d}{rng.randint(1, 12):02d}75"
            f"{rng.randint(101, 120):03d}{rng.randint(1, 999):03d}")
    return body + nir.calc_check_digits(body)


def case_variables(seed: int | None = None) -> dict[str, str]:
    rng = random.Random(seed)
    run = f"{rng.randint(10**8, 10**9 - 1)}"
    out = {"RUN": run, "OID": f"1.2.250.1.213.1.1.9.99.{run}"}
    for suffix in ("", "_B", "_C"):
        out[f"INS{suffix}"] = fresh_ins(rng)
        out[f"IPP{suffix}"] = f"{rng.randint(10**8, 10**9 - 1)}"
    # The same NIR with a key that does not match it.
    out["INS_BADKEY"] = out["INS_C"][:13] + f"{(int(out['INS_C'][13:]) + 1) % 97 or 97:02d}"
    for n in range(1, 6):
        out[f"DOC{n}"] = f"{out['OID']}.{n}"
        out[f"MSG{n}"] = f"K{run}{n}"
    return out


def fill(text: str, variables: dict[str, str], read_file) -> str:
    """${NAME} from the variables; ${BASE64:file}, ${SHA1:file}, ${SIZE:file} of a filled-in file."""
    def replace(match: re.Match) -> str:
        name, argument = match.group(1), match.group(2)
        if argument is None:
            if name not in variables:
                raise KeyError(f"unknown variable ${{{name}}}")
            return variables[name]
        data = read_file(argument)
        if name == "BASE64":
            return base64.b64encode(data).decode()
        if name == "SHA1":
            return base64.b64encode(hashlib.sha1(data).digest()).decode()
        if name == "SIZE":
            return str(len(data))
        raise KeyError(f"unknown function ${{{name}:...}}")
    return VARIABLE.sub(replace, text)


def fill_value(value: Any, variables: dict[str, str], read_file) -> Any:
    if isinstance(value, str):
        return fill(value, variables, read_file)
    if isinstance(value, list):
        return [fill_value(v, variables, read_file) for v in value]
    if isinstance(value, dict):
        return {k: fill_value(v, variables, read_file) for k, v in value.items()}
    return value


def pick(document: Any, path: str) -> list[Any]:
    """Values at a path such as `entry[*].resource.securityLabel[*].coding[0].code`; a missing
    step gives no value rather than an error."""
    current = [document]
    for part in path.split("."):
        name, *indexes = re.findall(r"[^\[\]]+", part)
        following = []
        for item in current:
            if isinstance(item, dict) and name in item:
                following.append(item[name])
        for index in indexes:
            expanded = []
            for item in following:
                if not isinstance(item, list):
                    continue
                if index == "*":
                    expanded.extend(item)
                elif index.lstrip("-").isdigit() and -len(item) <= int(index) < len(item):
                    expanded.append(item[int(index)])
            following = expanded
        current = following
    return current
