"""moto's server (`python3 -m moto.server`) for the CloudFormation deploy test, with the one
resource type our state stack uses that moto's CloudFormation lacks: AWS::SecretsManager::Secret.

moto implements Secrets Manager itself but has no CloudFormation model for a secret, so a stack
with one "succeeds" with the secret missing and `Ref` empty. The model below creates the secret
through moto's own Secrets Manager backend (SecretString, or GenerateSecretString with or without
a JSON template) and answers `Ref` with its ARN, as CloudFormation does. Arguments are
moto.server's (-H, -p).
"""
import json
import secrets
import string

from moto.core.common_models import CloudFormationModel


class CfnSecret(CloudFormationModel):
    # moto files every model under the service named by its module path.
    __module__ = "moto.secretsmanager.cfn_secret"

    def __init__(self, arn, name):
        self.arn = arn
        self.name = name

    @staticmethod
    def cloudformation_name_type():
        return "Name"

    @staticmethod
    def cloudformation_type():
        return "AWS::SecretsManager::Secret"

    @property
    def physical_resource_id(self):
        return self.arn

    @classmethod
    def has_cfn_attr(cls, attr):
        return attr in ("Id",)

    def get_cfn_attribute(self, attribute_name):
        return self.arn

    @staticmethod
    def _generate(spec):
        length = int(spec.get("PasswordLength", 32))
        alphabet = string.ascii_letters + string.digits
        if not spec.get("ExcludePunctuation"):
            alphabet += "!#$%&()*+,-.:;<=>?@[]^_{|}~"
        value = "".join(secrets.choice(alphabet) for _ in range(length))
        if "SecretStringTemplate" in spec:
            doc = json.loads(spec["SecretStringTemplate"])
            doc[spec["GenerateStringKey"]] = value
            return json.dumps(doc)
        return value

    @classmethod
    def create_from_cloudformation_json(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs):
        props = cloudformation_json.get("Properties", {})
        name = props.get("Name", resource_name)
        value = props.get("SecretString")
        if value is None:
            value = cls._generate(props.get("GenerateSecretString", {}))
        from moto.secretsmanager.models import secretsmanager_backends

        backend = secretsmanager_backends[account_id][region_name]
        created = json.loads(
            backend.create_secret(
                name=name,
                secret_string=value,
                secret_binary=None,
                description=props.get("Description"),
                tags=props.get("Tags"),
                kms_key_id=props.get("KmsKeyId"),
                client_request_token=None,
                replica_regions=[],
                force_overwrite=False,
            )
        )
        return cls(created["ARN"], name)

    @classmethod
    def delete_from_cloudformation_json(cls, resource_name, cloudformation_json, account_id, region_name):
        from moto.secretsmanager.models import secretsmanager_backends

        backend = secretsmanager_backends[account_id][region_name]
        backend.delete_secret(resource_name, recovery_window_in_days=None, force_delete_without_recovery=True)


if __name__ == "__main__":
    import moto
    from moto.server import main

    print(f"moto {moto.__version__}", flush=True)
    main()
