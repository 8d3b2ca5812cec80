// The rotator's custom ARM role: exactly the actions in rotator-role-actions.json (no wildcards).
// Deployed once with createDefinition=true (definition) and once per target subscription with a principalId
// (assignment at that subscription): Bicep cannot assign at subscription scope from a resource-group module.
targetScope = 'subscription'

param roleGuid string
param roleName string = ''
param createDefinition bool = false
param assignableSubscriptionIds array = []
@description('Principal to assign the role to at this subscription; empty = no assignment.')
param principalId string = ''

var actions = loadJsonContent('rotator-role-actions.json')

resource definition 'Microsoft.Authorization/roleDefinitions@2022-04-01' = if (createDefinition) {
  name: roleGuid
  properties: {
    roleName: roleName
    description: 'aks-credential-rotator: read AKS clusters and reset their service-principal secret.'
    type: 'customRole'
    permissions: [
      {
        actions: actions
        notActions: []
      }
    ]
    assignableScopes: [for subscriptionId in assignableSubscriptionIds: '/subscriptions/${subscriptionId}']
  }
}

resource assignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(principalId)) {
  name: guid(subscription().id, principalId, roleGuid)
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleGuid)
  }
}

output roleDefinitionId string = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleGuid)
