// One custom role definition (no assignment): the caller passes its actions, loaded from a JSON file in this folder
// (main.bicep: loadJsonContent), so the emulator, preflight and tests read the very same lists.
// The GUID must be unique per subscription, region and environment (main.bicep derives it from resourceToken):
// a GUID shared by two environments makes the second rewrite the first one's assignable scopes (issue 16).
targetScope = 'subscription'

param roleGuid string
@description('Unique in the tenant: custom role names are tenant-wide.')
param roleName string
param roleDescription string
@description('Control-plane actions; no wildcards (tests/test_infra.py checks).')
param actions array = []
@description('Data-plane actions; no wildcards.')
param dataActions array = []
param assignableSubscriptionIds array

resource definition 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: roleGuid
  properties: {
    roleName: roleName
    description: roleDescription
    type: 'customRole'
    permissions: [
      {
        actions: actions
        notActions: []
        dataActions: dataActions
        notDataActions: []
      }
    ]
    assignableScopes: [for subscriptionId in assignableSubscriptionIds: '/subscriptions/${subscriptionId}']
  }
}

output roleDefinitionId string = definition.id
output roleGuid string = definition.name
output roleName string = roleName
