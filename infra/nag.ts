/**
 * cdk-nag acknowledgements shared by the stacks. cdk-nag 3 matches a finding by its exact id
 * (`AwsSolutions-IAM5[Action::s3:GetObject*]`), so the wildcard findings that CDK's grant*
 * helpers always produce are listed here once, with one reason.
 */
import { Validations } from 'aws-cdk-lib';
import type { IConstruct } from 'constructs';

/** Wildcard actions that `grantRead`/`grantReadWrite`/`grantDelete` on a bucket and its KMS key
 * emit: prefixes of one service's object-level actions, never `*`. */
export const GRANT_WILDCARD_ACTIONS = [
  's3:GetObject*',
  's3:GetBucket*',
  's3:List*',
  's3:DeleteObject*',
  's3:Abort*',
  'kms:ReEncrypt*',
  'kms:GenerateDataKey*',
] as const;

/** Acknowledges AwsSolutions-IAM5 for the grant wildcards on `scope` (and its children): the
 * actions above and `<bucket ARN>/*` for each bucket named in `objectResources`. */
export function acknowledgeGrantWildcards(scope: IConstruct, objectResources: string[]): void {
  const reason =
    'Wildcards come from CDK grant helpers: object-level S3 actions on the objects of one named bucket (bucket/*) and KMS data-key actions on one key. Nothing is granted on other resources.';
  for (const a of GRANT_WILDCARD_ACTIONS) Validations.of(scope).acknowledge({ id: `AwsSolutions-IAM5[Action::${a}]`, reason });
  for (const r of objectResources) Validations.of(scope).acknowledge({ id: `AwsSolutions-IAM5[Resource::${r}/*]`, reason });
}
