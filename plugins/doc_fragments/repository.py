# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Documentation fragment of the options that say where the backup repository is and how to open it.

Modules that read or write the repository use ``extends_documentation_fragment: [hyperv.backup.repository]``
and extend ``repository_argument_spec()`` from ``module_utils/repository/repository_options.py``; a unit test keeps the
two in step.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """Repository options shared by every module that uses the backup repository."""

    DOCUMENTATION = r'''
options:
  repository:
    description:
      - Where the backup repository is, as seen from the machine that runs the module (the controller or backup proxy).
      - A local directory path, or C(s3://bucket/prefix) for S3-compatible object storage.
      - If the value is not specified in the task, the value of environment variable E(HYPERV_BACKUP_REPOSITORY) will be used instead.
    type: str
    required: true
    version_added: 0.1.0
  repository_passphrase:
    description:
      - Passphrase of an encrypted repository (AES-256-GCM, key derived with scrypt). Never logged or returned.
      - Set it when the repository is created to encrypt it; it cannot be recovered or added later. It can be changed, and a
        second (recovery) passphrase added, with O(hyperv.backup.hyperv_backup_repository#module:state=passphrase_changed) and
        O(hyperv.backup.hyperv_backup_repository#module:state=key_slot_added).
      - Leave it unset for an unencrypted repository. An empty string is refused (also from an exported but empty environment
        variable), and so is a passphrase for a repository whose config says it is not encrypted.
      - If the value is not specified in the task, the value of environment variable E(HYPERV_BACKUP_REPOSITORY_PASSPHRASE) will be used instead.
    type: str
    version_added: 0.1.0
  repository_s3_endpoint_url:
    description:
      - URL of the S3 endpoint, for S3-compatible storage (MinIO, Ceph, Wasabi, ...). Leave unset for AWS.
      - If the value is not specified in the task, the value of environment variable E(HYPERV_BACKUP_S3_ENDPOINT_URL) will be used instead.
    type: str
    version_added: 0.1.0
  repository_s3_region:
    description:
      - S3 region; C(us-east-1) when unset.
      - If the value is not specified in the task, the value of environment variable E(AWS_REGION) or E(AWS_DEFAULT_REGION) will be used instead.
    type: str
    version_added: 0.1.0
  repository_s3_access_key:
    description:
      - S3 access key id. Without it, boto3 looks for credentials as usual (profile, instance role).
      - If the value is not specified in the task, the value of environment variable E(AWS_ACCESS_KEY_ID) will be used instead.
    type: str
    version_added: 0.1.0
  repository_s3_secret_key:
    description:
      - S3 secret access key. Never logged or returned.
      - If the value is not specified in the task, the value of environment variable E(AWS_SECRET_ACCESS_KEY) will be used instead.
    type: str
    version_added: 0.1.0
  repository_s3_session_token:
    description:
      - S3 session token for temporary credentials. Never logged or returned.
      - If the value is not specified in the task, the value of environment variable E(AWS_SESSION_TOKEN) will be used instead.
    type: str
    version_added: 0.1.0
  repository_s3_profile:
    description:
      - Named profile of the AWS configuration files.
      - If the value is not specified in the task, the value of environment variable E(AWS_PROFILE) will be used instead.
    type: str
    version_added: 0.1.0
  repository_s3_validate_certs:
    description: Whether to check the TLS certificate of the S3 endpoint.
    type: bool
    default: true
    version_added: 0.1.0
  repository_s3_ca_bundle:
    description: CA bundle file used to check the TLS certificate of the S3 endpoint.
    type: path
    version_added: 0.1.0
  repository_s3_object_lock_mode:
    description:
      - Object Lock mode of the objects written, on a repository created with O(hyperv.backup.hyperv_backup_repository#module:object_lock_days).
      - C(COMPLIANCE) cannot be shortened or removed by anyone, C(GOVERNANCE) can by users with special permission.
    type: str
    choices: [COMPLIANCE, GOVERNANCE]
    default: COMPLIANCE
    version_added: 0.1.0
requirements:
  - blake3
  - xxhash
  - zstandard
  - cryptography (for an encrypted repository)
  - boto3 (for an S3 repository)
'''
