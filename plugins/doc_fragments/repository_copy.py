# -*- coding: utf-8 -*-
# Copyright: hyperv.backup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Documentation fragments of a second repository given as one dict (issue 15, a second copy).

``DOCUMENTATION`` documents O(target) of hyperv_backup_copy, ``KEYS_FROM`` documents O(copy_keys_from) of
hyperv_backup_repository; both take the keys of the repository options (doc_fragments/repository.py) without their
environment fallbacks (which belong to the repository the task names at the top level).
``module_utils/repository/repository_copy.py`` (``repository_dict_spec``) builds the matching argument spec. The
suboptions are written out in both: a doc fragment must be a plain string literal (ansible-test's yamllint reads it).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """A second repository as one dict option."""

    DOCUMENTATION = r'''
options:
  target:
    description:
      - The repository the backups are copied to; it must exist (create it with
        M(hyperv.backup.hyperv_backup_repository), with O(hyperv.backup.hyperv_backup_repository#module:copy_keys_from)
        the source so that copies compare chunk ids only).
      - The same keys as the top-level repository options, for the target.
    type: dict
    required: true
    version_added: 0.1.0
    suboptions:
      repository:
        description: Where the repository is, a local directory or C(s3://bucket/prefix), as seen from the machine that runs the module.
        type: str
        required: true
      repository_passphrase:
        description:
          - Its passphrase when it is encrypted; never logged or returned. Unset for an unencrypted repository; an empty
            string is refused.
          - Unlike the top-level option, no environment variable is read.
        type: str
      repository_s3_endpoint_url:
        description: URL of its S3 endpoint (S3-compatible storage); unset for AWS.
        type: str
      repository_s3_region:
        description: Its S3 region; C(us-east-1) when unset.
        type: str
      repository_s3_access_key:
        description: S3 access key id. Without it, boto3 looks for credentials as usual (profile, instance role).
        type: str
      repository_s3_secret_key:
        description: S3 secret access key. Never logged or returned.
        type: str
      repository_s3_session_token:
        description: S3 session token for temporary credentials. Never logged or returned.
        type: str
      repository_s3_profile:
        description: Named profile of the AWS configuration files.
        type: str
      repository_s3_validate_certs:
        description: Whether to check the TLS certificate of the S3 endpoint.
        type: bool
        default: true
      repository_s3_ca_bundle:
        description: CA bundle file used to check the TLS certificate of the S3 endpoint.
        type: path
      repository_s3_object_lock_mode:
        description: Object Lock mode of the objects written (a repository created with Object Lock).
        type: str
        choices: [COMPLIANCE, GOVERNANCE]
        default: COMPLIANCE
'''

    KEYS_FROM = r'''
options:
  copy_keys_from:
    description:
      - With O(state=present), create the repository with the data and id keys and the chunk size of this existing
        repository (wrapped under O(repository_passphrase), which may differ from that repository's), so that
        M(hyperv.backup.hyperv_backup_copy) between the two compares chunk ids only and copies index pages verbatim
        instead of reading and re-hashing every chunk. It is a repository of its own (id, key slots, Object Lock, padding).
      - Anyone who can open one of the two can read the objects of the other; see docs/copy.md.
      - An existing repository is left as it is; RV(keys_shared) says whether it has that repository's keys.
    type: dict
    version_added: 0.1.0
    suboptions:
      repository:
        description: Where the repository is, a local directory or C(s3://bucket/prefix), as seen from the machine that runs the module.
        type: str
        required: true
      repository_passphrase:
        description:
          - Its passphrase when it is encrypted; never logged or returned. Unset for an unencrypted repository; an empty
            string is refused.
          - Unlike the top-level option, no environment variable is read.
        type: str
      repository_s3_endpoint_url:
        description: URL of its S3 endpoint (S3-compatible storage); unset for AWS.
        type: str
      repository_s3_region:
        description: Its S3 region; C(us-east-1) when unset.
        type: str
      repository_s3_access_key:
        description: S3 access key id. Without it, boto3 looks for credentials as usual (profile, instance role).
        type: str
      repository_s3_secret_key:
        description: S3 secret access key. Never logged or returned.
        type: str
      repository_s3_session_token:
        description: S3 session token for temporary credentials. Never logged or returned.
        type: str
      repository_s3_profile:
        description: Named profile of the AWS configuration files.
        type: str
      repository_s3_validate_certs:
        description: Whether to check the TLS certificate of the S3 endpoint.
        type: bool
        default: true
      repository_s3_ca_bundle:
        description: CA bundle file used to check the TLS certificate of the S3 endpoint.
        type: path
      repository_s3_object_lock_mode:
        description: Object Lock mode of the objects written (a repository created with Object Lock).
        type: str
        choices: [COMPLIANCE, GOVERNANCE]
        default: COMPLIANCE
'''
