from flask import Blueprint

fhir = Blueprint("fhir", __name__, url_prefix="/fhir")
